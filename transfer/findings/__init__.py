"""`transfer audit`'s checks of a dataset before training: label issues, duplicates
and leaks, outliers, class balance, image issues (`transfer.commands.audit` runs them)."""
