"""The .mlo compiler: parse -> IR -> check -> resolve -> lower to an ExecutionPlan."""
