"""The quarantine: entries the filter keeps under ``policy.quarantine_dir`` (issue 17)."""
