"""Task and queue names: the public wire contract (docs/contract.md, "Commands")."""

from typing import Final

CREATE_REQUEST_TASK: Final = "commands.create_request"
UPDATE_MACHINE_STATUS_TASK: Final = "commands.update_machine_status"
RETURN_MACHINES_TASK: Final = "commands.return_machines"
# A provider says machines of a request will not come (a refused launch).
REPORT_LAUNCH_FAILURE_TASK: Final = "commands.report_launch_failure"

REQUESTS_QUEUE: Final = "commands.requests"
MACHINES_QUEUE: Final = "commands.machines"

QUEUE_OF_TASK: Final[dict[str, str]] = {
    CREATE_REQUEST_TASK: REQUESTS_QUEUE,
    UPDATE_MACHINE_STATUS_TASK: MACHINES_QUEUE,
    RETURN_MACHINES_TASK: REQUESTS_QUEUE,
    REPORT_LAUNCH_FAILURE_TASK: MACHINES_QUEUE,
}
ALL_QUEUES: Final = (REQUESTS_QUEUE, MACHINES_QUEUE)

# The command gateway's endpoints: POST /commands/<name> sends the task of that name.
GATEWAY_COMMANDS: Final[dict[str, str]] = {
    "create-request": CREATE_REQUEST_TASK,
    "return-machines": RETURN_MACHINES_TASK,
    "update-machine-status": UPDATE_MACHINE_STATUS_TASK,
    "report-launch-failure": REPORT_LAUNCH_FAILURE_TASK,
}
