-- The TechEmpower benchmark tables, served only with [bench] routes = true. They stay
-- empty (and cost nothing) unless `percore-bench seed` fills them; they are in the schema
-- because every statement is prepared when a connection opens.
CREATE TABLE world (
    id           integer PRIMARY KEY,
    randomnumber integer NOT NULL
);

CREATE TABLE fortune (
    id      integer PRIMARY KEY,
    message text NOT NULL
);
