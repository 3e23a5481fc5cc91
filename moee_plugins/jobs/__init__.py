"""Jobs: work that drives an adapter, so it lives above the adapters it drives (the layers are in
docs/development.md). Imported on use; importing this package imports neither Ray nor anything else optional.

* :func:`moee_plugins.jobs.ray_files.embed_files`: the Ray file job, a corpus file -> parquet shards with ``id`` and
  ``vector`` columns (what ``moee embed --engine ray`` runs), around the Ray adapter's
  :func:`~moee_plugins.ray.embed_dataset`.
* :func:`moee_plugins.jobs.ray_serve.deployment`: the ``moee serve`` API (:mod:`moee_plugins.serve`) as a Ray Serve
  application of N replicas, each built by the Ray adapter's :class:`~moee_plugins.ray.MoEEPredictor`.
"""
