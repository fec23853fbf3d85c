"""Test helpers: a real clamd (clamd_harness), a real daemon (serve), Debian's clamd
(debian_clamd), sample mail and mailboxes (mailboxes), the MIME evasion corpus (evasion), the
mailbox owner's attack steps (attacker), directories other users can reach (dirs), and scanning
a file by path (scanning). Fault clamds are in tests/fakes/."""
