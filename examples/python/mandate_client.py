#!/usr/bin/env python3
"""How an orchestrator drives Mandate over HTTP, with the standard library only:
submit a plan with a gated step, follow the task's Server-Sent Events (resumed
with Last-Event-ID when the stream drops), approve the gated step with an
approver's token when the task reaches needs_approval, print the final status.
Exit 0 when the task completed, 1 otherwise.

    MANDATE_SERVER=http://127.0.0.1:7700 MANDATE_AGENT_TOKEN=mdt_... \\
    MANDATE_APPROVER_TOKEN=mdt_... python3 mandate_client.py [plan.json]
"""
import json, os, sys, urllib.error, urllib.request

SERVER = os.environ.get("MANDATE_SERVER", "http://127.0.0.1:7700").rstrip("/")
AGENT_TOKEN = os.environ["MANDATE_AGENT_TOKEN"]
APPROVER_TOKEN = os.environ["MANDATE_APPROVER_TOKEN"]
FINAL = {"completed", "failed_terminal", "escalated_to_human", "cancelled"}


def call(method, path, token, body=None):
    """One JSON request; an API error ({code, message, ...}) ends the script."""
    request = urllib.request.Request(
        SERVER + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        error = json.load(e)
        sys.exit(f"{method} {path}: HTTP {e.code} {error['code']}: {error['message']}")


def events(task_id):
    """Yields (type, data) of each event of the task, from its first one."""
    last_id = None
    while True:
        headers = {"Authorization": f"Bearer {AGENT_TOKEN}", "Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id  # resume exactly after it
        url = f"{SERVER}/v1/events?task={task_id}&from=0"
        try:
            # The server sends a keep-alive comment every 15 s, so a 60 s
            # silence means the connection is gone.
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=60) as stream:
                fields, data = {}, []
                for raw in stream:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if not line:  # a blank line ends an event
                        if data:
                            last_id = fields.get("id", last_id)
                            yield fields.get("event"), json.loads("\n".join(data))
                        fields, data = {}, []
                    elif not line.startswith(":"):  # ":" starts a comment
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
        except (urllib.error.URLError, OSError) as e:
            print(f"stream dropped ({e}); resuming after event {last_id}", file=sys.stderr)


def approve(task_id):
    """Approves each step of the task waiting in the approver's inbox."""
    inbox = call("GET", "/v1/approvals", APPROVER_TOKEN)["approvals"]
    for approval in (a for a in inbox if a["task_id"] == task_id):
        print(f"approving step {approval['step']}: {approval['summary']}")
        decided = call("POST", f"/v1/approvals/{approval['id']}", APPROVER_TOKEN,
                       {"decision": "approve", "comment": "approved by mandate_client.py"})
        print(f"  recorded as event #{decided['seq']}")


def main():
    plan_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "plan.json")
    with open(plan_path) as f:
        plan = json.load(f)
    task = call("POST", "/v1/tasks", AGENT_TOKEN, {"plan": plan})
    task_id = task["id"]
    print(f"submitted task {task_id} ({task['status']})")
    for event_type, data in events(task_id):
        print(f"  #{data['seq']} {event_type}")
        if event_type == "ApprovalRequested":
            approve(task_id)
        elif event_type.startswith("Task"):
            status = call("GET", f"/v1/tasks/{task_id}", AGENT_TOKEN)["status"]
            if status in FINAL:
                print(f"task {task_id} {status}")
                return 0 if status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
