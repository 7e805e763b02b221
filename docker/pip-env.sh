# Sourced (with `.`) by the Dockerfile's pip steps: turn the build arguments into pip's environment.
#
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST: pip reads them itself; an empty one is
# dropped so that pip keeps its default (PyPI).
# WEENSY_PIP_CERT_URL: a CA bundle to trust for HTTPS (docker/test.sh serves the host's pip `cert` this way, for a
# network that inspects TLS); it is fetched into /tmp for this one step and never kept in the image.
for _name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST WEENSY_PIP_CERT_URL; do
    [ -n "$(printenv "$_name")" ] || unset "$_name"
done
unset _name
if [ -n "${WEENSY_PIP_CERT_URL:-}" ]; then
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$WEENSY_PIP_CERT_URL" /tmp/pip-ca.pem
    export PIP_CERT=/tmp/pip-ca.pem
fi
