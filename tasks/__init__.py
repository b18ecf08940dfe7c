"""The Celery app, its tasks (thin: they call core/stages.py) and the canvas of a job."""
