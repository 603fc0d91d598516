#!/bin/sh
# cubbi: `opencode` with OPENAI_BASE_URL honoured (see the Dockerfile). With it set (and no
# OPENCODE_CONFIG_CONTENT of the user's own), opencode gets the OpenAI-compatible provider
# `cubbi` at that URL, its key read from OPENAI_API_KEY by opencode itself (never written
# here), and OPENAI_MODEL as its model and the default.
if [ -n "${OPENAI_BASE_URL:-}" ] && [ -z "${OPENCODE_CONFIG_CONTENT:-}" ]; then
    OPENCODE_CONFIG_CONTENT=$(node -e '
const base = process.env.OPENAI_BASE_URL;
const model = process.env.OPENAI_MODEL || "default";
const models = {};
models[model] = {};
process.stdout.write(JSON.stringify({
  model: "cubbi/" + model,
  provider: {
    cubbi: {
      npm: "@ai-sdk/openai-compatible",
      name: "OpenAI-compatible (" + base + ")",
      options: { baseURL: base, apiKey: "{env:OPENAI_API_KEY}" },
      models,
    },
  },
}));') || exit 125
    export OPENCODE_CONFIG_CONTENT
fi
exec /usr/local/bin/opencode-cli "$@"
