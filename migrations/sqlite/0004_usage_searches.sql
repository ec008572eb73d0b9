-- Web searches the gateway ran for a request (each billed at the search
-- backend's price, included in `cost`).
ALTER TABLE usage ADD COLUMN searches INTEGER NOT NULL DEFAULT 0;
