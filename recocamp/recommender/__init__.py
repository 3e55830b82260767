"""The recommender: purchase history in, ranked items per customer out.

Owns: the interaction matrix with its id↔index maps (:mod:`.matrix`), the learned models on
``implicit`` — the only importer of it — (:mod:`.models`), the simple baselines
(:mod:`.baselines`) and the published TIFU-KNN baseline (:mod:`.tifu_knn`, evaluation only),
the replenishment blend of own items (:mod:`.repeat`, pure),
the interface every recommender implements, top-k selection and the objection rule
(:mod:`.ranking`), the exact top-k of factor products that skips the items that cannot
make the cut (:mod:`.bounded`, pure), which list a customer gets at request time — cached,
re-scored with purchases since training, or popular — (:mod:`.serving`, pure), the time-split
evaluation (:mod:`.evaluate`) and training with the promotion gate (:mod:`.training`).

May import: the base modules, ``store`` and ``data``.
Exports (by module): ``ranking.Recommender``, ``ranking.top_k``,
``ranking.objects_to_profiling``, ``serving.personal_list``, ``models.Hybrid``,
``evaluate.evaluate``, ``training.train``.
"""
