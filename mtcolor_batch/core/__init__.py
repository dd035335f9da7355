"""Shared foundations every stage uses: types, errors and exit codes, configuration, device, files, colour."""
