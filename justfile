# vidmesh tasks. `python3 run.py test` runs `just test` inside .venv.

set positional-arguments

# lint, type-check shared/, check generated schemas, run the suite
test *args:
    ruff check .
    mypy shared services vidmesh
    pytest "$@"

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
