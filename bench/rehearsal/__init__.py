"""`make rehearsal`: the production rehearsal (replica set, 2 TLS services, 2 edges, HAProxy
from deploy/, faults and a rolling restart under load); results in bench/results/rehearsal.json."""
