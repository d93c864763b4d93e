#!/bin/sh
# ai-sandbox: `docker compose` in /opt/ai-sandbox, or docker-compose 1.29 without the plugin.
cd "$(dirname "$0")" || exit 1
if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
fi
exec docker-compose "$@"
