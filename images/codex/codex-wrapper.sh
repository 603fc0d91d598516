#!/bin/sh
# cubbi: `codex` with OPENAI_BASE_URL honoured (see the Dockerfile).
if [ -n "${OPENAI_BASE_URL:-}" ]; then
    exec /usr/local/bin/codex-cli \
        -c 'model_provider="cubbi-openai"' \
        -c "model_providers.cubbi-openai={name=\"OpenAI-compatible ($OPENAI_BASE_URL)\",base_url=\"$OPENAI_BASE_URL\",env_key=\"OPENAI_API_KEY\",wire_api=\"responses\"}" \
        "$@"
fi
exec /usr/local/bin/codex-cli "$@"
