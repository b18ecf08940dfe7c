"""Distillation by stage, one room each: job, targets, teacher, student, export, report, control, runtime, maths (no Celery, no CLI)."""
