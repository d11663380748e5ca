"""Which pipeline serves an artifact: chosen by its family (docs/artifact.md)."""

from __future__ import annotations

from .artifact import DIN_FAMILY, RANKER_PROGRAM_FAMILIES, Artifact
from .din import DinPipeline
from .pipeline import CatalogPipeline, RankerPipeline
from .retrieval import RETRIEVAL_FAMILIES, make_retrieval_pipeline
from .validation import Limits


def make_pipeline(
    artifact: Artifact,
    limits: Limits | None = None,
    head_dtype: str = "float32",
    device: str = "cpu",
    compile_programs: str = "none",
) -> CatalogPipeline:
    """The pipeline that serves an artifact's family (``head_dtype``: of a ranker's
    crossing head, see RankerPipeline), placed on ``device`` ("cpu" or "cuda");
    ``compile_programs``: a ranker's exported program compiled by AOTInductor (CPU only;
    a mode of recserve.engine.aoti.COMPILE_MODES)."""
    if artifact.family in RANKER_PROGRAM_FAMILIES:
        ranker = RankerPipeline(
            artifact, limits, head_dtype=head_dtype, compile_programs=compile_programs
        )
        return ranker.place_on(device)
    if artifact.family in RETRIEVAL_FAMILIES:
        return make_retrieval_pipeline(artifact, limits).place_on(device)
    if artifact.family == DIN_FAMILY:
        return DinPipeline(artifact, limits).place_on(device)
    families = (*RANKER_PROGRAM_FAMILIES, *RETRIEVAL_FAMILIES, DIN_FAMILY)
    raise ValueError(
        f"{artifact.path}: model family {artifact.family!r} cannot be served by this recserve "
        f"(it serves: {', '.join(families)})"
    )
