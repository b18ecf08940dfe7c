"""distillq: distill large language models into small ones over Celery queues on Redis.

The project's folders are mapped into this namespace (``pyproject.toml``, ``package-dir``):
``distillq.app``, ``distillq.tasks``, ``distillq.workers``, ``distillq.core``,
``distillq.storage``; ``distillq.errors`` lives here.
"""
