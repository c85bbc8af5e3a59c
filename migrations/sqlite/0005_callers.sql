-- The named caller (`--client-token NAME=TOKEN`) that made each reservation, from its
-- `reserved` event; NULL when none was named. A rebuilt hold records it again, so that
-- only that caller may confirm or cancel the hold after a repair too.
ALTER TABLE reservations ADD COLUMN caller TEXT;
