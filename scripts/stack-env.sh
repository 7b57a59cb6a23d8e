# Sourced by `make celery` and `make flower`: the environment of the stack `make run` runs
# from this directory (.run/env), so a tool reaches this stack and no other. Without a
# running stack it keeps REDIS_URL from your environment, or stops with a clear error.
# shellcheck shell=bash
if [ -f .run/env ]; then
  . ./.run/env
  if ! kill -0 "$STACK_PID" 2>/dev/null; then
    echo "stack-env: .run/env is left from a stack that no longer runs (pid $STACK_PID);" \
         "start one with 'make run', or remove .run/env and set REDIS_URL" >&2
    exit 1
  fi
elif [ -n "${REDIS_URL:-}" ]; then
  echo "stack-env: no local stack runs here (.run/env is missing); using REDIS_URL from your environment" >&2
else
  echo "stack-env: no local stack runs here (.run/env is missing) and REDIS_URL is unset:" \
       "start one with 'make run' (in another terminal), or set REDIS_URL" >&2
  exit 1
fi
