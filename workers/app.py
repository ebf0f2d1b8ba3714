"""The Celery application the workers run; its configuration lives in `pgrag.queue`."""

from pgrag.queue import make_celery

app = make_celery()
app.conf.include = ["workers.tasks"]
