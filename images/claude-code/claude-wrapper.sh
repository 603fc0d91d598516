#!/bin/sh
# cubbi: `claude` with the session's MCP servers. For `--mcp NAME` cubbi writes
# /etc/cubbi/mcp/claude.json (0640 root:agent; header secrets live only there), and this passes
# it as --mcp-config, in the interactive and the headless mode alike. Subcommands
# (`claude mcp ...`, `claude config ...`) get their arguments unchanged.
config=/etc/cubbi/mcp/claude.json
# A session's stdio MCP servers start at boot beside sshd: wait (bounded) until they listen.
[ -x /etc/cubbi/mcp/wait-bridges ] && /etc/cubbi/mcp/wait-bridges
if [ -r "$config" ]; then
    case "${1:-}" in
        "" | -*) exec /usr/local/bin/claude-cli --mcp-config "$config" "$@" ;;
        mcp | config | doctor | update | install | migrate-installer | setup-token | plugin) ;;
        # A prompt given as the first word: the option goes after it.
        *) exec /usr/local/bin/claude-cli "$@" --mcp-config "$config" ;;
    esac
fi
exec /usr/local/bin/claude-cli "$@"
