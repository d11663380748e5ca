"""Trains the top-N recommenders (popularity, BPR-MF, GRU4Rec/LSTM, SASRec) and evaluates them.

Every model is trained on the training part of a leave-one-out split
(``training/evaluation.py``), early-stopped on validation NDCG@10 (the weights of the
best validation epoch are kept), and reported on the test items with the same code.

One module per job: ``config`` (settings), ``prepare`` (split and serving tables),
``loop`` (the early-stopping loop and metrics), ``scorers``, ``trained`` (export), and
one trainer per model (``popularity``, ``bpr``, ``sequence``; CFGAN in ``training/gan.py``
uses the same loop). ``din`` trains the ranker of a sequence retriever's candidates.
"""

from .bpr import sample_negatives, train_bpr
from .config import BPRConfig, DINConfig, LSTMConfig, PopConfig, SASRecConfig, SequenceConfig
from .din import TrainedDIN, train_din
from .loop import Report, Scorer, TopNEpochLog, epoch_bar, fit_topn, topn_metrics, with_run_info
from .popularity import train_popularity
from .prepare import SPLIT, TopNData, prepare_topn, start_run
from .scorers import pad_right, sequence_scorer, user_scorer
from .sequence import sequence_model, sequence_windows, train_sequence
from .trained import TrainedTopN

__all__ = [
    "SPLIT",
    "BPRConfig",
    "DINConfig",
    "LSTMConfig",
    "PopConfig",
    "Report",
    "SASRecConfig",
    "Scorer",
    "SequenceConfig",
    "TopNData",
    "TopNEpochLog",
    "TrainedDIN",
    "TrainedTopN",
    "epoch_bar",
    "fit_topn",
    "pad_right",
    "prepare_topn",
    "sample_negatives",
    "sequence_model",
    "sequence_scorer",
    "sequence_windows",
    "start_run",
    "topn_metrics",
    "train_bpr",
    "train_din",
    "train_popularity",
    "train_sequence",
    "user_scorer",
    "with_run_info",
]
