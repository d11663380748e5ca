"""Models trained outside recserve, packaged into its model repository."""

from .two_tower import PackageError, TwoTowerFiles, package_two_tower

__all__ = ["PackageError", "TwoTowerFiles", "package_two_tower"]
