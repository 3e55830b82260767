"""The recommender: purchase history in, ranked items per customer out.

Owns: the interaction matrix with its id↔index maps (:mod:`.matrix`), the learned models on
``implicit`` — the only importer of it — (:mod:`.models`), the simple baselines
(:mod:`.baselines`) and the published TIFU-KNN baseline (:mod:`.tifu_knn`, evaluation only),
the interface every recommender implements and top-k selection (:mod:`.ranking`), the
time-split evaluation (:mod:`.evaluate`) and training with the promotion gate
(:mod:`.training`).

May import: the base modules, ``store`` and ``data``.
Exports (by module): ``ranking.Recommender``, ``ranking.top_k``, ``models.Hybrid``,
``evaluate.evaluate``, ``training.train``.
"""
