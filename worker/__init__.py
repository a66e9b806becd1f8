"""The arq worker: payment jobs and the expiry sweeper."""
