"""What serving does with a model, without the wire: numpy, torch and the kernels.

``artifact`` loads and saves model artifacts (docs/artifact.md); ``schema`` encodes
feature values; ``validation`` checks requests against the server's limits;
``pipeline`` and ``retrieval`` turn a request into a ``Ranking`` (prepare, batch
compute, finish: ``batch_plan``), and ``dispatch`` picks the one an artifact's family
needs; ``crossing`` and ``int8_head`` serve the DNN rankers' fused path; ``explain``
attributes a ranker's logits to input fields; ``sharding`` splits a catalog across
servers. Nothing here imports grpc.
"""
