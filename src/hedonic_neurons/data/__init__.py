"""IR data: loaders for MS MARCO / TREC files, the three task targets, IR heuristics, the built-in
demo corpus, named datasets with query-level splits, and task metrics (issue 3).

The one text-processing function is :func:`terms`.
"""

from hedonic_neurons.data.demo import DEMO_NAME, DemoCorpus, demo_corpus
from hedonic_neurons.data.heuristics import (
    ALL_FEATURES,
    FEATURES,
    PASSAGE_FEATURES,
    QUERY_FEATURES,
    HeuristicFeatures,
    heuristic_features,
)
from hedonic_neurons.data.loaders import (
    Pair,
    Triple,
    check_qrels_ids,
    from_ir_datasets,
    read_passages,
    read_qrels,
    read_queries,
    read_rerank_input,
    read_run,
    read_triples,
)
from hedonic_neurons.data.metrics import ndcg_at_10, ndcg_at_10_per_query, regression_metrics, scores_by_query
from hedonic_neurons.data.splits import (
    DATASETS,
    IRDataset,
    dl19,
    load_dataset,
    load_pairs,
    msmarco_dev,
    query_ids,
    shared_ir_root,
    split_queries,
    top_per_query,
)
from hedonic_neurons.data.tasks import TASKS, task_targets
from hedonic_neurons.data.text import STOP_WORDS, cqtr, mean_tf_l, terms

__all__ = [
    "ALL_FEATURES",
    "DATASETS",
    "DEMO_NAME",
    "FEATURES",
    "PASSAGE_FEATURES",
    "QUERY_FEATURES",
    "STOP_WORDS",
    "TASKS",
    "DemoCorpus",
    "HeuristicFeatures",
    "IRDataset",
    "Pair",
    "Triple",
    "check_qrels_ids",
    "cqtr",
    "demo_corpus",
    "dl19",
    "from_ir_datasets",
    "heuristic_features",
    "load_dataset",
    "load_pairs",
    "mean_tf_l",
    "msmarco_dev",
    "ndcg_at_10",
    "ndcg_at_10_per_query",
    "query_ids",
    "read_passages",
    "read_qrels",
    "read_queries",
    "read_rerank_input",
    "read_run",
    "read_triples",
    "regression_metrics",
    "scores_by_query",
    "shared_ir_root",
    "split_queries",
    "task_targets",
    "terms",
    "top_per_query",
]
