-- A notification's body (its message: what happened, the signed response
-- links) moves to a table of its own. It is written once (and again only
-- when an item joins its group), while the notification's row is rewritten
-- on every claim and every outcome; with the body inside it, each of those
-- rewrites copied a few kilobytes (SQLite rewrites the row, PostgreSQL
-- writes a new tuple and its index entries).
CREATE TABLE notification_bodies (
    id    TEXT PRIMARY KEY NOT NULL,
    body  TEXT NOT NULL
);
INSERT INTO notification_bodies (id, body) SELECT id, body FROM notifications;
ALTER TABLE notifications DROP COLUMN body;
