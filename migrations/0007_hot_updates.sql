-- Room for HOT updates in the tables that every sink commit upserts.
--
-- An upsert that changes no indexed column can write the row's new version
-- on the same page (a heap-only tuple, "HOT"): no new index entries, and
-- the old version is pruned by the next visit to the page instead of
-- waiting for VACUUM. It needs free space on the page, and a full page
-- (the default fillfactor, 100) has none. In a 55 s run at 8,400 events/s
-- (benchmarks/RESULTS.md, "HOT updates"), before this migration 4 % of
-- user_last_seen's updates were HOT, 23 % of order_analytics' and 38 % of
-- market_analytics' (2,485 rows, 51,715 updates); after it 77 %, 74 % and
-- 72 %, with about half the dead row versions.
--
-- fillfactor applies to pages written from now on; existing pages fill up
-- as before until they are rewritten (VACUUM FULL, CLUSTER).
ALTER TABLE market_analytics     SET (fillfactor = 50);
ALTER TABLE strategy_performance SET (fillfactor = 50);
ALTER TABLE order_analytics      SET (fillfactor = 70);
ALTER TABLE user_behavior        SET (fillfactor = 70);
ALTER TABLE user_last_seen       SET (fillfactor = 50);
ALTER TABLE strategy_state       SET (fillfactor = 50);
ALTER TABLE second_sums          SET (fillfactor = 70);
ALTER TABLE event_counts         SET (fillfactor = 70);
ALTER TABLE kafka_offsets        SET (fillfactor = 50);

-- Every commit raises users' last_second, which this index holds, so no
-- update of user_last_seen could be HOT while it exists. Its only reader
-- is the start-up restore (users seen within the active-user window), for
-- which one sequential scan is fine.
DROP INDEX user_last_seen_second_idx;
