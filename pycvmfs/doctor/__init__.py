"""`pycvmfs doctor`: can this node mount, as the user running it?

Each check is a pure function from facts to a `CheckResult` (`node`, `cache`,
`repository`); the facts are gathered by `gather_node` and `gather_repository` (files,
sysctls, a probe process in a user namespace, the network); `runner` puts them together
and `cli.doctor` only prints."""
