"""The database schema as its history: migration N brings a database to schema version N.

Append only: a released migration is never edited, since databases out there already ran it.
`PRAGMA user_version` holds how many have been applied; the store runs the missing ones in
order, each in its own transaction, and refuses a database whose version is higher than it
knows (written by a newer release). The first release had no version: its schema is
migration 1, written with IF NOT EXISTS so that it applies to those databases unchanged.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1 (release 0.2.0): tasks and nodes
    """
    CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        batch_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        command TEXT NOT NULL,
        args TEXT NOT NULL,
        env TEXT NOT NULL,
        cores INTEGER NOT NULL,
        cwd TEXT NOT NULL DEFAULT '',
        target_node TEXT NOT NULL DEFAULT '',
        node TEXT NOT NULL DEFAULT '',
        core_ids TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        signal INTEGER,
        error TEXT NOT NULL DEFAULT '',
        submitted_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        stdout_path TEXT NOT NULL DEFAULT '',
        stderr_path TEXT NOT NULL DEFAULT '',
        kill_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS tasks_active ON tasks(state)
        WHERE state IN ('pending', 'assigning', 'running', 'lost');
    CREATE INDEX IF NOT EXISTS tasks_batch ON tasks(batch_id) WHERE batch_id != '';
    CREATE TABLE IF NOT EXISTS nodes (
        name TEXT PRIMARY KEY,
        core_ids TEXT NOT NULL,
        memory_bytes INTEGER NOT NULL,
        state TEXT NOT NULL,
        last_heartbeat REAL NOT NULL
    );
    """,
    # 2: names, owners and resource usage; indexes for --list's filters. Newest first is rowid
    # order, which an index gives for free when every column before the rowid is fixed by an
    # equality: hence (node, state), queried with the states spelled out. The owner's index
    # leaves the state out: an index holding the state is rewritten at every state change,
    # which costs bulk throughput, and a user's tasks are found newest first all the same.
    """
    ALTER TABLE tasks ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN cpu_user_seconds REAL;
    ALTER TABLE tasks ADD COLUMN cpu_system_seconds REAL;
    ALTER TABLE tasks ADD COLUMN max_rss_bytes INTEGER;
    DROP INDEX IF EXISTS tasks_active;
    CREATE INDEX tasks_state ON tasks(state);
    CREATE INDEX tasks_node_state ON tasks(node, state);
    CREATE INDEX tasks_owner ON tasks(owner);
    CREATE INDEX tasks_name ON tasks(name);
    """,
    # 3: control (SPEC §11): time limits, retries and their attempts, dependencies, throttles
    """
    ALTER TABLE tasks ADD COLUMN time_limit REAL;
    ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN after TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE tasks ADD COLUMN throttle INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tasks ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
    """,
    # 4: security (SPEC §12): users with one token each (its id, and the SHA-256 of its secret),
    # which Unix user ran each task, and the host's own facts (e.g. that it made its first admin)
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        admin INTEGER NOT NULL DEFAULT 0,
        token_id TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    ALTER TABLE tasks ADD COLUMN unix_user TEXT NOT NULL DEFAULT '';
    """,
)
