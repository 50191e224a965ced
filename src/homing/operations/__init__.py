"""Fleet operations that the CLI and the admin API both call: same code, same audit.

``fleet``: devices, revocation, tokens, factory stations, fleet status;
``rollouts``: staged rollouts and their evaluation; ``provisioning``: offline
factory provisioning of a device. Commands and handlers parse and call these;
these open the transactions and write the audit log.
"""
