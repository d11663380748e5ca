"""Models trained outside recserve, packaged into its model repository."""

from .ranker import RankerFiles, package_ranker
from .tables import PackageError
from .two_tower import TwoTowerFiles, package_two_tower

__all__ = ["PackageError", "RankerFiles", "TwoTowerFiles", "package_ranker", "package_two_tower"]
