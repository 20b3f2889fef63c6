# syntax=docker/dockerfile:1
# The Airflow image of docker-compose.yml: Airflow 3.3.2 + the project's pinned dependencies
# + the propensity package. dags/ and plugins/ are mounted by compose, not copied.
# Build context: the repository root, filtered by .dockerignore.
FROM apache/airflow:3.3.2-python3.11

USER airflow

# The project's own lock (it pins apache-airflow==3.3.2 too), installed without Airflow's
# constraints file; `pip check` fails the build if it disagrees with a provider the image
# ships (celery, fab, postgres, ...).
RUN --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    pip install --no-cache-dir -r /tmp/requirements.txt && pip check

# The package itself, built from a private copy (the build writes egg-info next to the sources).
# PROPENSITY_HOME is a named volume: creating its folder here makes the volume airflow-owned.
RUN --mount=type=bind,target=/mnt/context \
    cp -r /mnt/context /tmp/propensity \
    && pip install --no-cache-dir --no-deps /tmp/propensity \
    && rm -rf /tmp/propensity \
    && mkdir -p /opt/airflow/propensity
