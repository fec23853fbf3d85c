# avtool: the daily check of the Courier filter, quarantine expiry and digest
# (/usr/lib/avtool/daily-check). It prints, and cron mails root, only when a step fails.
# Where systemd runs, avtool-daily.timer does it.
MAILTO=root
47 6 * * * root [ -d /run/systemd/system ] || [ ! -x /usr/lib/avtool/daily-check ] || /usr/lib/avtool/daily-check
