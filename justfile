# vidmesh tasks. `python3 run.py test` runs `just test` inside .venv.

set positional-arguments

# lint, type-check shared/, services/ and vidmesh/ (mypy --strict), run the suite (which checks
# the generated schemas too) in two worker processes, each test module whole in one of them
test *args:
    ruff check .
    mypy shared services vidmesh
    pytest -n 2 --dist loadfile "$@"

# the tests that need no running system (no nats-server, services, vidmesh up or store servers)
test-fast *args:
    pytest -m "not slow" "$@"

# the tests that start the system
test-slow *args:
    pytest -m slow "$@"

lint:
    ruff check .
    ruff format --check .

typecheck:
    mypy shared services vidmesh

# regenerate schemas/ from the msgspec types
schemas:
    vidmesh schemas --write

# start everything on this machine
up *args:
    vidmesh up "$@"

# job overhead benchmark: vidmesh wall time / direct ffmpeg wall time
bench-overhead *args:
    python bench/job_overhead.py "$@"

# download benchmark: GET /download/:id with Range / plain aiohttp FileResponse (and S3)
bench-download *args:
    python bench/download_throughput.py "$@"

# on a machine with an NVIDIA GPU: the gpu tests, then GPU-assisted vs CPU-only fps
gpu-check *args:
    pytest -m gpu -rs -p no:cacheprovider
    python bench/gpu_pipeline.py "$@"
