-- Custom event types: every version of a definition is kept, and any
-- change to the definitions notifies the running services (channel
-- `custom_event_definitions`), which recompile their validators at once,
-- without a restart.
CREATE TABLE custom_event_definition_versions (
    definition_id uuid        NOT NULL REFERENCES custom_event_definitions (id),
    version       integer     NOT NULL,
    schema        jsonb       NOT NULL,
    is_active     boolean     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (definition_id, version)
);

CREATE FUNCTION notify_custom_event_definitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('custom_event_definitions', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER custom_event_definitions_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON custom_event_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_custom_event_definitions();

-- Dead letters: the event a replay stored, and indexes for the filters of
-- GET /api/v1/dead-letters.
ALTER TABLE dead_letters ADD COLUMN replayed_event_id uuid;
CREATE INDEX dead_letters_event_type_idx ON dead_letters (event_type, received_at);
CREATE INDEX dead_letters_source_idx ON dead_letters (source, received_at);
