#!/bin/sh
# cubbi: `codex` with OPENAI_BASE_URL honoured (see the Dockerfile), and the session's MCP
# servers (`--mcp`): cubbi writes one `-c` value per server to /etc/cubbi/mcp/codex.args and
# the header values they name (env_http_headers) to codex.env, so no secret is in an argv.
mcp=/etc/cubbi/mcp
if [ -r "$mcp/codex.args" ]; then
    if [ -r "$mcp/codex.env" ]; then
        while IFS= read -r line; do
            [ -n "$line" ] && export "$line"
        done < "$mcp/codex.env"
    fi
    # Put the servers' -c options before the caller's arguments.
    n=$#
    while IFS= read -r value; do
        [ -n "$value" ] && set -- "$@" -c "$value"
    done < "$mcp/codex.args"
    i=0
    while [ "$i" -lt "$n" ]; do
        first=$1
        shift
        set -- "$@" "$first"
        i=$((i + 1))
    done
fi
if [ -n "${OPENAI_BASE_URL:-}" ]; then
    exec /usr/local/bin/codex-cli \
        -c 'model_provider="cubbi-openai"' \
        -c "model_providers.cubbi-openai={name=\"OpenAI-compatible ($OPENAI_BASE_URL)\",base_url=\"$OPENAI_BASE_URL\",env_key=\"OPENAI_API_KEY\",wire_api=\"responses\"}" \
        "$@"
fi
exec /usr/local/bin/codex-cli "$@"
