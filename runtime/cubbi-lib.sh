#!/bin/bash
# cubbi-lib.sh: shell functions shared by cubbi-init and cubbi-project (sourced, never run).
# Installed beside them in /usr/local/lib/cubbi. Needs bash (arrays, namerefs).
#
# KEY=VALUE files (/etc/cubbi/env, /etc/cubbi/init.env) are read exactly as cubbi's Rust side
# defines them (src/config/env_file.rs; a test feeds the same files to both): a trailing CR
# and leading blanks are dropped, empty and '#' lines skipped, an "export " prefix allowed,
# the key is everything before the first '=' and must be a portable name, one pair of
# matching surrounding quotes is stripped, nothing is evaluated or expanded.

# cubbi_unquote VALUE: VALUE without one pair of matching surrounding quotes.
cubbi_unquote() {
    local v=$1
    if [ ${#v} -ge 2 ]; then
        case $v in
            \"*\") v=${v:1:${#v}-2} ;;
            \'*\') v=${v:1:${#v}-2} ;;
        esac
    fi
    printf '%s' "$v"
}

# cubbi_read_env FILE ARRAYNAME [pam]: fills the associative array ARRAYNAME. With "pam", a
# value is cut at its first '#' first, as pam_env does for /etc/cubbi/env (cubbi never writes
# one), so readers see what ssh sessions see. A missing file is empty. Lines that are not
# KEY=VALUE with a valid name are skipped; the status is then 1 and CUBBI_ENV_BAD_LINE holds
# the first such line number (never its text: values may be secrets).
cubbi_read_env() {
    local file=$1 line key val n=0 status=0
    local -n cubbi_out=$2
    local pam=${3:-}
    CUBBI_ENV_BAD_LINE=
    [ -r "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%$'\r'}
        line=${line#"${line%%[!$' \t']*}"}
        case $line in '' | '#'*) continue ;; esac
        line=${line#export }
        key=${line%%=*}
        if [ "$key" = "$line" ] || ! [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
            [ -n "$CUBBI_ENV_BAD_LINE" ] || CUBBI_ENV_BAD_LINE=$n
            status=1
            continue
        fi
        val=${line#*=}
        [ "$pam" = pam ] && val=${val%%#*}
        cubbi_out[$key]=$(cubbi_unquote "$val")
    done < "$file"
    return $status
}

# cubbi_mask_urls: stdin to stdout with every "://user:secret@" or "://token@" of a URL cut
# to "://***@", and CRs removed, for status lines and logs.
cubbi_mask_urls() {
    tr -d '\r' | sed -E 's#(://)[^/@[:space:]]+@#\1***@#g'
}
