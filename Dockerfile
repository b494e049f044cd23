# The operator image: API, planner, kopf operator, coordinator and rlhfctl.
# No torch: the worker image carries it. Built elsewhere (no container engine here).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
COPY worker_image/rlhf_worker ./worker_image/rlhf_worker
RUN pip wheel --no-cache-dir -c constraints.txt -w /wheels ".[operator]"

FROM python:3.11-slim
# The same image runs the operator (`rlhfctl operator`) and each job's
# coordinator pod (`python -m rlhf_operator.coordinator`, which writes to
# /var/lib/rlhf unless the job names a checkpoint path on a shared volume).
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin rlhf \
 && mkdir -p /var/lib/rlhf && chown 10001:10001 /var/lib/rlhf
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "rlhf-operator[operator]" \
 && rm -rf /wheels \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None"
USER 10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 8081
ENTRYPOINT ["rlhfctl"]
CMD ["operator"]
