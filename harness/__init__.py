"""The real stack (Redis, database, Celery workers, gunicorn) and the fake engines that tests and
benchmarks run against."""
