# avtool: rescan delivered mail when clamd's signatures changed (/usr/lib/avtool/rescan-job).
# It prints, and cron mails root, only when the rescan fails; what it finds goes to the
# postmaster. Where systemd runs, avtool-rescan.timer does it.
MAILTO=root
17 * * * * root [ -d /run/systemd/system ] || [ ! -x /usr/lib/avtool/rescan-job ] || /usr/lib/avtool/rescan-job
