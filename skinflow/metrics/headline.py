"""The headline test metrics, in the order tables show them: the one list the pipeline summary, the ablation grid,
``compare``'s defaults and the report build on (each adds its own extras). No imports, so the light commands
(``compare``, ``report``) can read it without torch."""

HEADLINE_METRICS = ("test/top1_exact", "test/top6_exact", "test/graded_top1", "test/graded_top6", "test/malignant_miss_top1")
