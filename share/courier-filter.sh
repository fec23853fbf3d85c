#!/bin/sh
# Courier starts /usr/lib/courier/filters/avtool as user courier, with an empty environment and
# PATH=/usr/bin:/bin (courierfilter(8)): exec the installed avtool by absolute path. The socket is
# named after this script's name in /etc/courier/filters/active, so copies can coexist.
exec @PREFIX@/bin/avtool serve --name "$(basename "$0")"
