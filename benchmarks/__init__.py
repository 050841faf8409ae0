"""Performance measurements that print ratios; never part of pass/fail."""
