"""`make chaos`: fault scenarios against the real stack, measured as reliability figures.

| key            | what goes wrong                                   | module      |
|----------------|---------------------------------------------------|-------------|
| wechat_chaos   | WeChat fails 30% of jscode2session calls at random | wechat.py   |
| mongod_kill    | the standalone mongod is SIGKILLed and restarted   | mongod.py   |
| primary_kill   | a replica set's primary is SIGKILLed               | failover.py |
| malformed      | 10,000 junk HTTP and 10,000 junk gRPC requests     | junk.py     |
| soak           | five minutes of mixed calls: memory and fds        | soak.py     |

Each scenario starts its own stack (`stack.py`) and reports figures with PASS/MISS
against its targets; `run.py` runs them in order, `report.py` writes the results.
"""
