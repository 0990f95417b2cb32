-- sfq 0020: model files content-addressed and out of line, held-out predictions compact (issue 15). A
-- file's bytes are a blob keyed by their SHA-256 (the same bytes are stored once, whichever models have them), in 8 MiB chunks (no 1 GB
-- ceiling of one bytea value) or, with SFQ_ARTIFACT_STORE, in a store outside PostgreSQL under their
-- SHA-256 (blobs.location). model_artifacts keeps what each model's file is (format, recorded SHA-256,
-- size) and points at its blob; a retention eviction (queue_app/artifact_store.py) unlinks the blob
-- (blob NULL, evicted_at set) and the file is rebuilt by retraining when it is needed again.
-- The existing files move into blobs here, keyed by the SHA-256 of their bytes (a file whose recorded
-- SHA-256 differs stays detectably corrupted: reading it compares the bytes with the recorded one).

CREATE TABLE blobs (
    sha256 text PRIMARY KEY CONSTRAINT blobs_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint NOT NULL CHECK (size >= 0),
    chunks integer NOT NULL CHECK (chunks >= 0),  -- rows in blob_chunks (0 when stored outside)
    location text,  -- NULL: in blob_chunks; else the URL of the store holding it (SFQ_ARTIFACT_STORE)
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE blobs IS
    'Model files by the SHA-256 of their bytes, each stored once; removed when no model links to it.';

CREATE TABLE blob_chunks (
    sha256 text NOT NULL REFERENCES blobs (sha256) ON DELETE CASCADE,
    n integer NOT NULL CHECK (n >= 0),
    bytes bytea NOT NULL,
    PRIMARY KEY (sha256, n)
);
COMMENT ON TABLE blob_chunks IS 'A blob''s bytes in order, 8 MiB a chunk (artifact_store.CHUNK_BYTES).';

ALTER TABLE model_artifacts
    ADD COLUMN blob text,
    ADD COLUMN evicted_at timestamptz;
COMMENT ON COLUMN model_artifacts.blob IS
    'The blob holding the file''s bytes; NULL once evicted (the file is rebuilt by retraining when needed).';
COMMENT ON COLUMN model_artifacts.sha256 IS 'The SHA-256 recorded when the model was trained; reads check it.';

UPDATE model_artifacts SET blob = encode(sha256(bytes), 'hex');
INSERT INTO blobs (sha256, size, chunks)
SELECT blob, octet_length(bytes), greatest(ceil(octet_length(bytes) / 8388608.0), 1)
  FROM model_artifacts WHERE model_id IN (SELECT min(model_id) FROM model_artifacts GROUP BY blob);
INSERT INTO blob_chunks (sha256, n, bytes)
SELECT a.blob, n, substring(a.bytes FROM n * 8388608 + 1 FOR 8388608)
  FROM model_artifacts a JOIN blobs b ON b.sha256 = a.blob, generate_series(0, b.chunks - 1) AS n
 WHERE a.model_id IN (SELECT min(model_id) FROM model_artifacts GROUP BY blob);
ALTER TABLE model_artifacts
    DROP COLUMN bytes,
    ADD CONSTRAINT model_artifacts_blob_fkey FOREIGN KEY (blob) REFERENCES blobs (sha256);
CREATE INDEX model_artifacts_blob ON model_artifacts (blob);

-- Held-out predictions are written compactly from now on, as walk-forwards' are (a model_predictions row per
-- bar took about 94 bytes with its index), and the bars and actual values of every model's predictions are
-- stored once for all the models that predict the same ones (prediction_axes): a model keeps its predicted
-- values (4 bytes each). Older models' rows stay where they are (read through the same query).
CREATE TABLE prediction_axes (
    sha256 text PRIMARY KEY,  -- of first_ts, the offsets and the actual values (gateway._axes)
    first_ts timestamptz NOT NULL,
    seconds integer[] NOT NULL,  -- each prediction's bar, in seconds after first_ts
    actual real[] NOT NULL,
    CHECK (cardinality(seconds) = cardinality(actual))
);
COMMENT ON TABLE prediction_axes IS
    'Predictions'' bars and actual values, stored once for all the models predicting the same ones.';
ALTER TABLE model_prediction_series
    ALTER COLUMN seconds DROP NOT NULL,
    ALTER COLUMN actual DROP NOT NULL,
    ADD COLUMN axes text REFERENCES prediction_axes (sha256),
    DROP CONSTRAINT model_prediction_series_check,
    ADD CONSTRAINT model_prediction_series_check CHECK (
        CASE WHEN axes IS NULL
             THEN cardinality(seconds) = cardinality(predicted) AND cardinality(predicted) = cardinality(actual)
             ELSE seconds IS NULL AND actual IS NULL END);
COMMENT ON TABLE model_prediction_series IS
    'A model''s out-of-sample predictions (held-out window or walk-forward), float4; since 0020 the held-out '
    'ones too, and their bars and actual values in prediction_axes (4 bytes a prediction of its own).';
COMMENT ON TABLE model_predictions IS
    'Held-out predictions of models trained before 0020, a row per bar (newer ones: model_prediction_series).';
