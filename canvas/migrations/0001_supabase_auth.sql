-- What Supabase projects already have, created only where it is missing (a plain PostgreSQL for tests and
-- `make canvas`): the `anon` and `authenticated` roles its data API switches to, and auth.uid(), which reads the
-- verified token's `sub` from the `request.jwt.claims` setting the data API sets per request
-- (https://supabase.com/docs/guides/database/postgres/row-level-security, "Helper functions").
-- On Supabase every statement here is a no-op.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
end
$$;

create schema if not exists auth;

do $$
begin
  if not exists (
    select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'auth' and p.proname = 'uid'
  ) then
    execute $fn$
      create function auth.uid() returns uuid
      language sql stable
      as 'select nullif(current_setting(''request.jwt.claims'', true)::json ->> ''sub'', '''')::uuid'
    $fn$;
  end if;
end
$$;

grant usage on schema auth to anon, authenticated;
