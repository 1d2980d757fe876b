"""The operator's side of live rollouts: `ddnn deploy` sends deploy, rollback and status
commands to the running servers and reports their answers."""
