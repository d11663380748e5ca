"""Settings of the top-N trainers, saved in each artifact's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PopConfig:
    """Most-popular has nothing to learn; the seed is kept for a uniform interface."""

    seed: int = 42

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BPRConfig:
    """BPR-MF settings; saved in the artifact's manifest."""

    seed: int = 42
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 1024  # (user, positive, negative) triples per step
    learning_rate: float = 5e-3
    embedding_dim: int = 64
    l2: float = 1e-4  # L2 on the embedding rows a batch uses, per triple
    num_threads: int = 1

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SequenceConfig:
    """GRU4Rec / LSTM / SASRec settings; saved in the artifact's manifest."""

    seed: int = 42
    cell: str = "gru"  # "gru" (GRU4Rec), "lstm" or "sasrec" (SASRecConfig)
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 64  # sequence windows per step
    max_length: int = 50  # items of history the model reads (training windows and serving)
    learning_rate: float = 3e-3
    embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.2
    weight_decay: float = 0.0
    num_threads: int = 1

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LSTMConfig(SequenceConfig):
    """The LSTM variant of GRU4Rec: the same settings with ``cell="lstm"``."""

    cell: str = "lstm"


@dataclass
class SASRecConfig(SequenceConfig):
    """SASRec settings: the sequence settings with ``cell="sasrec"``, where
    ``num_layers`` counts Transformer blocks and ``hidden_size`` is the width of each
    block's feed-forward layer; ``max_length`` is also the number of learned positions."""

    cell: str = "sasrec"
    # Chosen on validation NDCG@10 among four settings (docs/results.md).
    learning_rate: float = 2e-3
    patience: int = 6
    num_layers: int = 2
    num_heads: int = 2
    hidden_size: int = 128


@dataclass
class DINConfig:
    """Settings of the DIN ranker of a retriever's candidates (training/topn/din.py)."""

    seed: int = 42
    retriever: str = "sasrec"  # the model of --model-repo whose candidates it ranks
    epochs: int = 6  # of the learned signals, on the positions the retriever was fitted to
    batch_size: int = 256  # positions per step
    learning_rate: float = 2e-3
    embedding_dim: int = 64
    max_length: int = 50  # history items the attention reads
    hard_negatives: int = 50  # the retriever's best items that were not next, per position
    random_negatives: int = 10  # uniform items, per position
    retrieve_n: int = 100  # candidates per list the blend is fitted on (the cascade's default)
    blend_steps: int = 300  # full-batch Adam steps of the blend
    blend_learning_rate: float = 0.05
    blend_users: float = 0.8  # share of users fitting the blend; the others are its test
    num_threads: int = 1

    def to_json(self) -> dict:
        return asdict(self)
