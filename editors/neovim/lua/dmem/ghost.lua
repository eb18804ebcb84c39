-- Ghost text: the server's inline completion shown as virtual text at the cursor.
-- Where Neovim has vim.lsp.inline_completion (0.12+) that does the work; otherwise this
-- module asks for a completion once typing pauses, cancels the request when the user
-- types on, and accepts it with a key that keeps its normal meaning when nothing is shown.
-- Accepting runs the item's command, so the server learns what was accepted.
local compat = require('dmem.compat')

local M = {}

local namespace = vim.api.nvim_create_namespace('dmem.ghost')
local buffers = {} -- bufnr -> { timer, request = {client, id}, ghost = {text, row, col, command, client_id, extmark} }

M.namespace = namespace
M.stats = { requested = 0, cancelled = 0, shown = 0, accepted = 0 }

local function state(bufnr)
  if buffers[bufnr] == nil then
    buffers[bufnr] = {}
  end
  return buffers[bufnr]
end

local function native()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

function M.clear(bufnr)
  local s = buffers[bufnr]
  if s and s.ghost then
    pcall(vim.api.nvim_buf_del_extmark, bufnr, namespace, s.ghost.extmark)
    s.ghost = nil
  end
end

local function cancel(bufnr)
  local s = buffers[bufnr]
  if s == nil then
    return
  end
  if s.timer then
    s.timer:stop()
  end
  if s.request then
    compat.cancel(s.request.client, s.request.id)
    s.request = nil
    M.stats.cancelled = M.stats.cancelled + 1
  end
end

---The ghost text shown in `bufnr`, or nil.
function M.text(bufnr)
  local s = buffers[bufnr == 0 and vim.api.nvim_get_current_buf() or bufnr]
  return s and s.ghost and s.ghost.text
end

function M.visible(bufnr)
  return M.text(bufnr) ~= nil
end

local function show(bufnr, client, item, row, col)
  local text = item.insertText
  if type(text) == 'table' then
    text = text.value -- a snippet: shown and inserted as its plain text
  end
  if type(text) ~= 'string' or text == '' then
    return
  end
  local lines = vim.split(text, '\n', { plain = true })
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  local opts = { virt_text = { { lines[1], 'DmemGhost' } }, hl_mode = 'combine' }
  if compat.has('0.10') then
    opts.virt_text_pos = 'inline'
  else
    opts.virt_text_pos = col >= #line and 'overlay' or 'eol'
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for index = 2, #lines do
      table.insert(opts.virt_lines, { { lines[index], 'DmemGhost' } })
    end
  end
  M.clear(bufnr)
  local extmark = vim.api.nvim_buf_set_extmark(bufnr, namespace, row, col, opts)
  state(bufnr).ghost = { text = text, row = row, col = col, command = item.command, client_id = client.id, extmark = extmark }
  M.stats.shown = M.stats.shown + 1
end

---Ask for a completion at the cursor now (the debounce has passed).
function M.request(bufnr)
  local client = compat.client(bufnr)
  if client == nil or bufnr ~= vim.api.nvim_get_current_buf() then
    return
  end
  cancel(bufnr)
  local cursor = vim.api.nvim_win_get_cursor(0)
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = compat.position_params(client)
  -- Invoked: the debounce happened here, the server need not wait again
  params.context = { triggerKind = 1 }
  local s = state(bufnr)
  local request
  local ok, id = compat.request(client, 'textDocument/inlineCompletion', params, function(err, result)
    if s.request == request then
      s.request = nil
    end
    local stale = vim.api.nvim_get_current_buf() ~= bufnr
      or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
      or not vim.deep_equal(vim.api.nvim_win_get_cursor(0), cursor)
      or vim.api.nvim_get_mode().mode:sub(1, 1) ~= 'i'
    if err or result == nil or stale then
      return
    end
    local item = (result.items or result)[1]
    if item then
      show(bufnr, client, item, cursor[1] - 1, cursor[2])
    end
  end, bufnr)
  if ok and id then
    request = { client = client, id = id }
    s.request = request
    M.stats.requested = M.stats.requested + 1
  end
end

---The user typed or moved: drop what is shown, cancel what is asked, ask again later.
function M.typed(bufnr, debounce_ms)
  M.clear(bufnr)
  cancel(bufnr)
  local s = state(bufnr)
  if s.timer == nil then
    s.timer = compat.uv.new_timer()
  end
  s.timer:start(debounce_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_mode().mode:sub(1, 1) == 'i' then
      M.request(bufnr)
    end
  end))
end

---Insert the ghost text shown in `bufnr` and tell the server; false when none is shown.
function M.accept(bufnr)
  local s = buffers[bufnr]
  local ghost = s and s.ghost
  if ghost == nil then
    return false
  end
  M.clear(bufnr)
  cancel(bufnr)
  local lines = vim.split(ghost.text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(bufnr, ghost.row, ghost.col, ghost.row, ghost.col, lines)
  local last = ghost.row + #lines
  local column = (#lines == 1 and ghost.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last, column })
  M.stats.accepted = M.stats.accepted + 1
  local client = vim.lsp.get_client_by_id(ghost.client_id)
  if client and ghost.command then
    local command = { command = ghost.command.command, arguments = ghost.command.arguments }
    compat.request(client, 'workspace/executeCommand', command, function() end, bufnr)
  end
  return true
end

local function map_accept(bufnr, key)
  vim.keymap.set('i', key, function()
    if native() then
      if vim.lsp.inline_completion.get({ bufnr = bufnr }) then
        return ''
      end
      return compat.keys(key)
    end
    if M.visible(bufnr) then
      -- the buffer cannot change while an expr mapping is evaluated
      vim.schedule(function()
        M.accept(bufnr)
      end)
      return ''
    end
    return compat.keys(key)
  end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = 'dmem: accept the ghost text' })
end

function M.attach(client, bufnr, options)
  if options.accept_key then
    map_accept(bufnr, options.accept_key)
  end
  if native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    return
  end
  local group = vim.api.nvim_create_augroup('dmem.ghost.' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'TextChangedP' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.typed(bufnr, options.debounce_ms)
    end,
  })
  vim.api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      local s = buffers[bufnr]
      local cursor = vim.api.nvim_win_get_cursor(0)
      if s and s.ghost and (s.ghost.row ~= cursor[1] - 1 or s.ghost.col ~= cursor[2]) then
        M.typed(bufnr, options.debounce_ms)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.clear(bufnr)
      cancel(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      cancel(bufnr)
      local s = buffers[bufnr]
      if s and s.timer then
        s.timer:close()
      end
      buffers[bufnr] = nil
    end,
  })
end

return M
