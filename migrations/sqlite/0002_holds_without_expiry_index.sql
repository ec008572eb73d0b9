-- Open holds are few (one per request in flight), so the sweeper's scan
-- needs no index; without it, placing and settling a hold writes two
-- fewer b-tree pages.
DROP INDEX holds_by_expiry;
